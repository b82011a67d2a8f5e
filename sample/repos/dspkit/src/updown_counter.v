// tc_counter: loadable up/down counter (dspkit copy, signal names adapted to
// the dspkit style). Synchronous reset clears the count, load copies d, and
// when enable is high the count goes up (up = 1) or down (up = 0), wrapping.
// tc flags the terminal count in the current direction.
module tc_counter #(
    parameter WIDTH = 8
) (
    input                  clk,
    input                  rst,
    input                  enable,
    input                  up,
    input                  load,
    input      [WIDTH-1:0] d,
    output reg [WIDTH-1:0] count,
    output                 tc
);
    always @(posedge clk) begin
        if (rst)
            count <= {WIDTH{1'b0}};
        else if (load)
            count <= d;
        else if (enable) begin
            if (up)
                count <= count + 1'b1;
            else
                count <= count - 1'b1;
        end
    end

    assign tc = up ? (count == {WIDTH{1'b1}}) : (count == {WIDTH{1'b0}});
endmodule
