// chipforge synthesis asset: an up/down counter with synchronous load and wrap flag.
// Written for this project; Yosys scripts proposed by the synthesis job run on this design.
module cf_counter #(
    parameter WIDTH = 8
) (
    input  wire             clk,
    input  wire             rst_n,
    input  wire             en,
    input  wire             up,
    input  wire             load,
    input  wire [WIDTH-1:0] load_value,
    output reg  [WIDTH-1:0] count,
    output wire             wrap
);
    assign wrap = en && (up ? (count == {WIDTH{1'b1}}) : (count == {WIDTH{1'b0}}));

    always @(posedge clk or negedge rst_n) begin
        if (!rst_n)
            count <= {WIDTH{1'b0}};
        else if (load)
            count <= load_value;
        else if (en)
            count <= up ? count + 1'b1 : count - 1'b1;
    end
endmodule
