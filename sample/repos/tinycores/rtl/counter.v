// tc_counter: loadable up/down counter.
// On each rising clock edge: a synchronous reset clears the count; otherwise
// load copies d into the count; otherwise, when en is high, the count goes up
// by one (up = 1) or down by one (up = 0), wrapping around. tc is the terminal
// count flag: high when the count is all ones while counting up, or zero while
// counting down.
module tc_counter #(
    parameter WIDTH = 8
) (
    input                  clk,
    input                  rst,
    input                  en,
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
        else if (en) begin
            if (up)
                count <= count + 1'b1;
            else
                count <= count - 1'b1;
        end
    end

    assign tc = up ? (count == {WIDTH{1'b1}}) : (count == {WIDTH{1'b0}});
endmodule
